"""Pictures and cost counts of sparse attention patterns (matplotlib).

What the figures teach:

* ``plot_mask``: the token mask (query i on y, key j on x). With ``block_size`` the tile grid
  of a block kernel is drawn over it, each tile as empty (skipped), partial (computed, then
  masked element by element) or full (computed, no mask needed). Partial tiles are where a
  block kernel does wasted work: the allowed pairs are only part of what it computes.
* ``plot_block_kinds``: the same tiles as one pixel each, the map a block kernel iterates.
* ``plot_attention_weights`` / ``plot_query_weights``: softmax weights under a mask.
* ``plot_growth``: measured cost against n on log-log axes, beside an n^2 reference line.
* ``pattern_stats``: density, tile counts, FLOPs and score memory against dense attention.

Every function returns a ``matplotlib.figure.Figure`` (built without pyplot, so nothing is
shown or kept open behind the caller's back) or draws into the ``ax`` it is given.
``MaskPlot``, ``BlockKindsPlot`` and ``QueryWeightsPlot`` are the same figures kept alive:
``update`` draws new data into them and returns the artists it changed, for interactive
views that redraw only those (the explorer in ``widgets``).
Patterns are those of Longformer (Beltagy et al. 2020, arXiv:2004.05150) and BigBird
(Zaheer et al. 2020, arXiv:2007.14062); see ``patterns``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.legend import Legend
from matplotlib.patches import Patch

from .patterns import EMPTY, FULL, PARTIAL, Pattern, as_pattern

ALLOWED_COLOR = "#24477f"  # an allowed (query, key) pair
KIND_COLORS = ("#f4f4f4", "#f28e2b", "#59a14f")  # empty, partial, full tiles
KIND_NAMES = ("empty", "partial", "full")
SCORE_BYTES = 4  # one float32 score
FLOPS_PER_PAIR_PER_DIM = 4  # q.k: multiply + add; weight * v: multiply + add


# ---- counts ---------------------------------------------------------------------------


def _tile_areas(seq_len: int, block_size: int) -> torch.Tensor:
    """(nb, nb) number of token pairs in each tile; the last block may be short."""
    sizes = torch.full((-(-seq_len // block_size),), block_size)
    sizes[-1] = seq_len - block_size * (len(sizes) - 1)
    return sizes.view(-1, 1) * sizes.view(1, -1)


def _head_kinds(p: Pattern, block_size: int, head: int | None) -> torch.Tensor:
    """Block kinds as (H', nb, nb): every head's (H' = 1 for a shared pattern) or one head's."""
    kinds = p.block_kinds(block_size)
    kinds = kinds if kinds.dim() == 3 else kinds.unsqueeze(0)
    if head is None or kinds.shape[0] == 1:
        return kinds
    return kinds[head : head + 1]


def _check_head(p: Pattern, head: int | None) -> None:
    if head is not None and p.num_heads is not None and not 0 <= head < p.num_heads:
        raise ValueError(f"expected head in [0, {p.num_heads}), got {head}")


def pattern_stats(
    pattern: Pattern | torch.Tensor,
    block_size: int = 64,
    head_dim: int = 64,
    head: int | None = None,
) -> dict:
    """What a pattern costs, exactly and as a block kernel of `block_size` would run it.

    With ``head=None`` every count, FLOP and byte figure is the total over the pattern's
    heads (``num_heads``, 1 for a shared pattern) and ``density`` their mean; with ``head``
    they are that head's alone. Keys:

    * ``seq_len``, ``num_heads`` (heads counted), ``block_size``, ``head_dim``
    * ``density``: allowed pairs / n^2
    * ``num_blocks``: blocks per side, nb = ceil(n / block_size), so nb^2 tiles per head
    * ``active_blocks`` = ``partial_blocks`` + ``full_blocks``: tiles a block kernel computes
    * ``dense_flops`` = 4 n^2 d per head (q k^T and weights @ v, 2 FLOPs per multiply-add;
      the softmax is not counted), ``sparse_flops`` the same over allowed pairs only,
      ``block_flops`` over every pair of the active tiles (a short last block counts its
      real size)
    * ``dense_score_bytes`` / ``block_score_bytes``: float32 scores of all pairs / of the
      active tiles
    * ``ideal_speedup`` = dense_flops / block_flops: the best a block kernel can do
    """
    p = as_pattern(pattern)
    _check_head(p, head)
    n = p.seq_len
    kinds = _head_kinds(p, block_size, head)  # (H', nb, nb)
    heads = kinds.shape[0]  # 1 for a shared pattern or a chosen head
    area = _tile_areas(n, block_size)  # (nb, nb)

    if head is None or p.num_heads is None:
        allowed = p.allowed_pairs(block_size)  # the pattern's own count (O(n) for windows)
    else:  # one head of several: full tiles whole, partial tiles element by element
        allowed = int((area * (kinds == FULL)).sum())
        partial = (kinds == PARTIAL).nonzero()  # (T, 3) rows (0, qb, kb)
        partial[:, 0] = head  # kinds were sliced to one head: point back at it
        allowed += int(p.tile_masks(partial, block_size).sum())
    computed = int((area * (kinds != EMPTY)).sum())

    flops = FLOPS_PER_PAIR_PER_DIM * head_dim
    return {
        "seq_len": n,
        "num_heads": heads,
        "block_size": block_size,
        "head_dim": head_dim,
        "density": allowed / (heads * n * n),
        "num_blocks": kinds.shape[-1],
        "active_blocks": int((kinds != EMPTY).sum()),
        "partial_blocks": int((kinds == PARTIAL).sum()),
        "full_blocks": int((kinds == FULL).sum()),
        "dense_flops": flops * heads * n * n,
        "sparse_flops": flops * allowed,
        "block_flops": flops * computed,
        "dense_score_bytes": SCORE_BYTES * heads * n * n,
        "block_score_bytes": SCORE_BYTES * computed,
        "ideal_speedup": heads * n * n / computed if computed else float("inf"),
    }


# ---- figures --------------------------------------------------------------------------


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.subplots()
    return ax.get_figure(root=True), ax


def _token_labels(ax: Axes) -> None:
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")


def _tile_colors(kinds: torch.Tensor) -> np.ndarray:
    """(nb, nb, 4) RGBA tint of each tile kind: none on empty, light on partial and full."""
    rgba = torch.tensor(
        [to_rgba(c, alpha) for c, alpha in zip(KIND_COLORS, (0.0, 0.35, 0.3), strict=True)]
    )
    return rgba[kinds.long()].numpy()


def _tile_rectangles(edges: list[float], which: torch.Tensor) -> list:
    """Corners (4, 2) of the tiles where `which` (nb, nb) is True, in row-major tile order."""
    return [
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        for qb, kb in which.nonzero().tolist()
        for x0, x1, y0, y1 in [(edges[kb], edges[kb + 1], edges[qb], edges[qb + 1])]
    ]


def _grid_lines(edges: list[float]) -> list:
    lines = [[(e, edges[0]), (e, edges[-1])] for e in edges]
    return lines + [[(edges[0], e), (edges[-1], e)] for e in edges]


class _TileOverlay:
    """The tiles over a token image: a tint per tile, hatching on partial ones, grid lines.

    Three collections, made once and given new tiles by ``update`` (also another grid), so
    an interactive view keeps redrawing the same artists.
    """

    def __init__(self, ax: Axes):
        self.tint = ax.add_collection(
            PolyCollection([], lw=0, antialiased=False, zorder=2), autolim=False
        )
        self.hatches = ax.add_collection(
            PolyCollection(
                [], facecolor="none", edgecolor=KIND_COLORS[PARTIAL], hatch="//", lw=0, zorder=3
            ),
            autolim=False,
        )
        self.grid = ax.add_collection(
            LineCollection([], colors="#9a9a9a", linewidths=0.6, zorder=4), autolim=False
        )
        self.edges: list[float] | None = None

    @property
    def artists(self) -> list[Artist]:
        return [self.tint, self.hatches, self.grid]

    def update(self, kinds: torch.Tensor, edges: list[float]) -> None:
        """Show (nb, nb) tile kinds on a grid of pixel `edges` (nb + 1 of them)."""
        if edges != self.edges:  # another grid: every tile moves
            self.tint.set_verts(_tile_rectangles(edges, torch.ones_like(kinds, dtype=torch.bool)))
            self.grid.set_segments(_grid_lines(edges))
            self.edges = edges
        self.tint.set_facecolor(_tile_colors(kinds).reshape(-1, 4))  # row-major, as the verts
        self.hatches.set_verts(_tile_rectangles(edges, kinds == PARTIAL))

    def remove(self) -> None:
        for artist in self.artists:
            artist.remove()


def _mask_legend(ax: Axes, tiles: bool) -> Legend:
    handles = [
        Patch(facecolor=ALLOWED_COLOR, label="allowed pair"),
        Patch(facecolor="white", edgecolor="#9a9a9a", label="masked pair"),
    ]
    if tiles:
        handles += [
            Patch(
                facecolor=to_rgba(KIND_COLORS[FULL], 0.3), edgecolor="#9a9a9a", label="full tile"
            ),
            Patch(
                facecolor=to_rgba(KIND_COLORS[PARTIAL], 0.35),
                edgecolor=KIND_COLORS[PARTIAL],
                hatch="//",
                label="partial tile (masked inside)",
            ),
            Patch(facecolor="white", edgecolor="#9a9a9a", label="empty tile (skipped)"),
        ]
    return ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=2,
        fontsize="small",
        frameon=False,
    )


def _show_image(image: AxesImage | None, ax: Axes, data: torch.Tensor, **kwargs) -> AxesImage:
    """An image of `data` in `ax`: made on the first call, its data replaced afterwards."""
    if image is None:
        return ax.imshow(data.numpy(), **kwargs)
    rows, cols = data.shape
    image.set_data(data.numpy())
    image.set_extent((-0.5, cols - 0.5, rows - 0.5, -0.5))  # the shape may have changed
    return image


# The updatable plots below draw a figure once and then only replace its data: an
# interactive view (the explorer) changes a mask many times, and rebuilding the axes, ticks
# and legends each time costs more than drawing them. `update` returns the artists it
# changed, so a caller can redraw just those (matplotlib's blitting). The plot_* functions
# are one `update` of a fresh plot.


class MaskPlot:
    """A live ``plot_mask``: ``update`` draws another mask into the same axes."""

    def __init__(self, ax: Axes):
        self.ax = ax
        self.image: AxesImage | None = None
        self._tiles: _TileOverlay | None = None
        self._legend_tiles: bool | None = None  # whether the legend names the tile kinds
        _token_labels(ax)

    def update(
        self,
        pattern_or_mask: Pattern | torch.Tensor,
        head: int = 0,
        block_size: int | None = None,
        title: str | None = None,
    ) -> list[Artist]:
        """Show `pattern_or_mask` (head `head`); the arguments are those of ``plot_mask``."""
        p = as_pattern(pattern_or_mask)
        _check_head(p, head)
        n = p.seq_len
        idx = torch.arange(n)
        mask = p.allows(idx.view(-1, 1), idx.view(1, -1), head).expand(n, n)  # (n, n)
        ax = self.ax
        self.image = _show_image(
            self.image, ax, mask, cmap=ListedColormap(["white", ALLOWED_COLOR]), vmin=0, vmax=1
        )
        density = float(mask.sum()) / (n * n)
        stats = f"density {density:.1%}: exact sparse FLOPs are {density:.1%} of dense"
        if block_size is None:
            tiles = self._show_tiles(None, None)
        else:
            kinds = _head_kinds(p, block_size, head)[0]  # (nb, nb)
            # pixel edges of the tiles; the last block may be short
            edges = [-0.5 + min(b * block_size, n) for b in range(kinds.shape[-1] + 1)]
            tiles = self._show_tiles(kinds, edges)
            s = pattern_stats(p, block_size, head=head)
            stats = (
                f"density {density:.1%}; block {block_size}: {s['active_blocks']}/"
                f"{s['num_blocks'] ** 2} tiles = {s['block_flops'] / s['dense_flops']:.1%} "
                "of dense FLOPs"
            )
        if self._legend_tiles != (block_size is not None):
            self._legend_tiles = block_size is not None
            _mask_legend(ax, self._legend_tiles)
        head_note = f" (head {head})" if p.num_heads is not None else ""
        ax.set_title(f"{title or 'attention mask'}{head_note}\n{stats}", fontsize="medium")
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)  # query 0 on top, as imshow draws it
        return [self.image, *tiles, ax.title]

    def _show_tiles(self, kinds: torch.Tensor | None, edges: list[float] | None) -> list[Artist]:
        """The tile overlay (made on first use, removed without tiles); returns its artists."""
        if edges is None:
            if self._tiles is not None:
                self._tiles.remove()
                self._tiles = None
            return []
        if self._tiles is None:
            self._tiles = _TileOverlay(self.ax)
        self._tiles.update(kinds, edges)
        return self._tiles.artists


class BlockKindsPlot:
    """A live ``plot_block_kinds``: ``update`` draws another tile map into the same axes.

    With ``in_tokens`` the axes count tokens, not blocks: each tile covers its tokens, so
    the axes depend on the sequence length only and another block size only recolours.
    """

    def __init__(self, ax: Axes, in_tokens: bool = False):
        self.ax = ax
        self.in_tokens = in_tokens
        self.image: AxesImage | None = None
        if in_tokens:
            _token_labels(ax)

    def update(
        self,
        pattern: Pattern | torch.Tensor,
        block_size: int,
        head: int = 0,
        title: str | None = None,
    ) -> list[Artist]:
        """Show the tiles of `pattern`; the arguments are those of ``plot_block_kinds``."""
        p = as_pattern(pattern)
        _check_head(p, head)
        kinds = _head_kinds(p, block_size, head)[0]  # (nb, nb)
        ax = self.ax
        first = self.image is None
        self.image = _show_image(
            self.image,
            ax,
            kinds,
            cmap=ListedColormap(KIND_COLORS),
            norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
            interpolation="nearest",
        )
        if first:
            fig = ax.get_figure(root=True)
            colorbar = fig.colorbar(self.image, ax=ax, ticks=[EMPTY, PARTIAL, FULL])
            colorbar.ax.set_yticklabels(KIND_NAMES)
        nb = kinds.shape[-1]
        if self.in_tokens:
            # Pixel b spans tokens b * block_size .. (b + 1) * block_size - 1; the axes end
            # at the last token, cutting a short last block to its real size.
            end = nb * block_size - 0.5
            self.image.set_extent((-0.5, end, end, -0.5))
            limit = p.seq_len - 0.5
        else:
            ax.set_xlabel(f"key block ({block_size} tokens)")
            ax.set_ylabel(f"query block ({block_size} tokens)")
            limit = nb - 0.5
        counts = ", ".join(
            f"{int((kinds == k).sum())} {KIND_NAMES[k]}" for k in (FULL, PARTIAL, EMPTY)
        )
        head_note = f" (head {head})" if p.num_heads is not None else ""
        heading = title or f"block kinds, block {block_size}"
        ax.set_title(f"{heading}{head_note}\n{counts} of {kinds.numel()} tiles", fontsize="medium")
        ax.set_xlim(-0.5, limit)
        ax.set_ylim(limit, -0.5)
        return [self.image, ax.title]


class QueryWeightsPlot:
    """A live ``plot_query_weights``: ``update`` draws another query's weights.

    ``stems`` is one line through (j, 0), (j, weight), gap for each allowed key j. The y axis
    follows the largest weight, so it is among the artists an update changes.
    """

    def __init__(self, ax: Axes):
        self.ax = ax
        # Collections, not one bar patch per key: fast at n = 4096.
        self.shade = ax.add_collection(
            PolyCollection([], facecolor="#e6e6e6", lw=0, label="masked key"), autolim=False
        )
        # All stems in one line, NaN-separated: one path to draw, however many keys.
        (self.stems,) = ax.plot([], [], color=ALLOWED_COLOR, lw=1.5, label="weight")
        self.query_line = ax.axvline(0, color="#e15759", lw=1, label="query")
        ax.set_xlabel("key j")
        ax.set_ylabel("weight")
        ax.legend(loc="upper right", fontsize="small")

    def update(
        self,
        weights: torch.Tensor,
        allowed: torch.Tensor,
        query: int,
        title: str | None = None,
    ) -> list[Artist]:
        """Show `weights` (n,) of `query`; the arguments are those of ``plot_query_weights``."""
        if weights.dim() != 1 or allowed.shape != weights.shape:
            raise ValueError(
                f"expected weights and allowed of one shape (n,), got {tuple(weights.shape)} "
                f"and {tuple(allowed.shape)}"
            )
        n = weights.shape[0]
        top = max(float(weights.max()), 1e-12) * 1.1
        # One grey rectangle per run of masked keys, from its first to its last key.
        flags = torch.cat([torch.zeros(1), (~allowed.bool()).float().cpu(), torch.zeros(1)])
        starts = (flags.diff() == 1).nonzero().flatten() - 0.5  # (R,)
        ends = (flags.diff() == -1).nonzero().flatten() - 0.5  # (R,) one past the run's last key
        shade = torch.zeros(len(starts), 4, 2)  # (R, corner, x/y)
        shade[:, [0, 3], 0], shade[:, [1, 2], 0] = starts.view(-1, 1), ends.view(-1, 1)
        shade[:, [2, 3], 1] = top
        self.shade.set_verts(shade.numpy())
        # One vertical line per allowed key (a masked key's weight is 0: nothing to draw).
        keys = allowed.bool().cpu().nonzero().flatten()  # (A,)
        stems = torch.full((len(keys), 3, 2), torch.nan)  # (A, bottom/top/gap, x/y)
        stems[:, :2, 0] = keys.view(-1, 1)
        stems[:, 0, 1] = 0.0
        stems[:, 1, 1] = weights.detach().float().cpu()[keys]
        self.stems.set_data(stems[:, :, 0].flatten().numpy(), stems[:, :, 1].flatten().numpy())
        self.query_line.set_xdata([query, query])

        ax = self.ax
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(0, top)
        heading = title or f"attention weights of query {query}"
        ax.set_title(f"{heading}: {int(allowed.sum())} of {n} keys allowed", fontsize="medium")
        return [self.shade, self.stems, self.query_line, ax.yaxis, ax.title]


def plot_mask(
    pattern_or_mask: Pattern | torch.Tensor,
    head: int = 0,
    block_size: int | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Token mask heatmap of one head; with `block_size`, the block kernel's tiles over it.

    The title line gives the density and the FLOPs against dense attention: over the
    allowed pairs, and with `block_size` over the tiles a block kernel computes.
    Materializes n x n booleans: for teaching sizes.
    """
    fig, ax = _figure_and_axes(ax, (5.6, 5.6) if block_size else (4.8, 4.4))
    MaskPlot(ax).update(pattern_or_mask, head, block_size, title)
    return fig


def plot_block_kinds(
    pattern: Pattern | torch.Tensor,
    block_size: int,
    head: int = 0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The (nb, nb) map of tile kinds a block kernel iterates, one pixel per tile."""
    fig, ax = _figure_and_axes(ax, (5.2, 4.4))
    BlockKindsPlot(ax).update(pattern, block_size, head, title)
    return fig


def plot_attention_weights(
    weights: torch.Tensor,
    batch: int = 0,
    head: int = 0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of attention weights (B, H, n, n) at [batch, head], or of an (n, n) matrix."""
    if weights.dim() not in (2, 4) or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(
            f"expected weights of shape (B, H, n, n) or (n, n), got {tuple(weights.shape)}"
        )
    w = weights[batch, head] if weights.dim() == 4 else weights  # (n, n)
    fig, ax = _figure_and_axes(ax, (5.2, 4.4))
    image = ax.imshow(w.detach().float().cpu().numpy(), cmap="viridis", vmin=0)
    fig.colorbar(image, ax=ax, label="attention weight")
    _token_labels(ax)
    where = f"batch {batch}, head {head}" if weights.dim() == 4 else f"{w.shape[0]} tokens"
    ax.set_title(f"{title or 'attention weights'} ({where})", fontsize="medium")
    return fig


def plot_query_weights(
    weights: torch.Tensor,
    allowed: torch.Tensor,
    query: int,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """One query's weights (n,) over the keys: a line per allowed key, masked keys shaded."""
    fig, ax = _figure_and_axes(ax, (8.0, 2.6))
    QueryWeightsPlot(ax).update(weights, allowed, query, title)
    return fig


def plot_growth(
    sizes: Sequence[int],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    power: float = 2.0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Measurements (one line per name in `series`) against n, log-log, with n^power dashed.

    The reference line goes through the first series' value at the largest n (the least noisy
    measurement), so a series that grows as n^power runs along it.
    """
    fig, ax = _figure_and_axes(ax, (5.2, 3.8))
    for name, values in series.items():
        if len(values) != len(sizes):
            raise ValueError(
                f"expected {len(sizes)} values for {name!r} (one per size), got {len(values)}"
            )
        ax.loglog(sizes, values, "o-", label=name)
    anchor = next(iter(series.values()))[-1]
    reference = [anchor * (n / sizes[-1]) ** power for n in sizes]
    ax.loglog(sizes, reference, "--", color="#9a9a9a", label=rf"$\propto n^{{{power:g}}}$")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.set_title(title or f"{ylabel} against n", fontsize="medium")
    return fig
