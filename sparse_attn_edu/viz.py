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
Patterns are those of Longformer (Beltagy et al. 2020, arXiv:2004.05150) and BigBird
(Zaheer et al. 2020, arXiv:2007.14062); see ``patterns``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import BoundaryNorm, ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

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

    # Allowed pairs: full tiles whole, partial tiles element by element.
    allowed = int((area * (kinds == FULL)).sum())
    partial = (kinds == PARTIAL).nonzero()  # (T, 3) rows (head, qb, kb)
    if len(partial):
        if head is not None and p.num_heads is not None:
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


def _draw_tiles(ax: Axes, kinds: torch.Tensor, block_size: int, n: int) -> None:
    """Overlay (nb, nb) tile kinds on a token image: tint, hatching on partial, grid lines."""
    nb = kinds.shape[-1]
    rgba = torch.tensor(
        [to_rgba(c, alpha) for c, alpha in zip(KIND_COLORS, (0.0, 0.35, 0.3), strict=True)]
    )
    edges = [-0.5 + min(b * block_size, n) for b in range(nb + 1)]  # pixel edges of tiles
    ax.pcolormesh(edges, edges, rgba[kinds.long()].numpy(), shading="flat", zorder=2)
    partial = [
        Rectangle((edges[kb], edges[qb]), edges[kb + 1] - edges[kb], edges[qb + 1] - edges[qb])
        for qb, kb in (kinds == PARTIAL).nonzero().tolist()
    ]
    ax.add_collection(
        PatchCollection(
            partial, facecolor="none", edgecolor=KIND_COLORS[PARTIAL], hatch="//", lw=0, zorder=3
        )
    )
    lines = [[(e, edges[0]), (e, edges[-1])] for e in edges]
    lines += [[(edges[0], e), (edges[-1], e)] for e in edges]
    ax.add_collection(LineCollection(lines, colors="#9a9a9a", linewidths=0.6, zorder=4))


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
    p = as_pattern(pattern_or_mask)
    _check_head(p, head)
    n = p.seq_len
    idx = torch.arange(n)
    mask = p.allows(idx.view(-1, 1), idx.view(1, -1), head).expand(n, n)  # (n, n)
    fig, ax = _figure_and_axes(ax, (5.6, 5.6) if block_size else (4.8, 4.4))
    ax.imshow(mask.numpy(), cmap=ListedColormap(["white", ALLOWED_COLOR]), vmin=0, vmax=1)
    _token_labels(ax)

    density = float(mask.sum()) / (n * n)
    stats = f"density {density:.1%}: exact sparse FLOPs are {density:.1%} of dense"
    handles = [
        Patch(facecolor=ALLOWED_COLOR, label="allowed pair"),
        Patch(facecolor="white", edgecolor="#9a9a9a", label="masked pair"),
    ]
    if block_size is not None:
        s = pattern_stats(p, block_size, head=head)
        _draw_tiles(ax, _head_kinds(p, block_size, head)[0], block_size, n)
        stats = (
            f"density {density:.1%}; block {block_size}: {s['active_blocks']}/"
            f"{s['num_blocks'] ** 2} tiles = {s['block_flops'] / s['dense_flops']:.1%} "
            "of dense FLOPs"
        )
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
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=2,
        fontsize="small",
        frameon=False,
    )
    head_note = f" (head {head})" if p.num_heads is not None else ""
    ax.set_title(f"{title or 'attention mask'}{head_note}\n{stats}", fontsize="medium")
    return fig


def plot_block_kinds(
    pattern: Pattern | torch.Tensor,
    block_size: int,
    head: int = 0,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The (nb, nb) map of tile kinds a block kernel iterates, one pixel per tile."""
    p = as_pattern(pattern)
    _check_head(p, head)
    kinds = _head_kinds(p, block_size, head)[0]  # (nb, nb)
    fig, ax = _figure_and_axes(ax, (5.2, 4.4))
    image = ax.imshow(
        kinds.numpy(),
        cmap=ListedColormap(KIND_COLORS),
        norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
        interpolation="nearest",
    )
    colorbar = fig.colorbar(image, ax=ax, ticks=[EMPTY, PARTIAL, FULL])
    colorbar.ax.set_yticklabels(KIND_NAMES)
    ax.set_xlabel(f"key block ({block_size} tokens)")
    ax.set_ylabel(f"query block ({block_size} tokens)")
    counts = ", ".join(f"{int((kinds == k).sum())} {KIND_NAMES[k]}" for k in (FULL, PARTIAL, EMPTY))
    head_note = f" (head {head})" if p.num_heads is not None else ""
    heading = title or f"block kinds, block {block_size}"
    ax.set_title(f"{heading}{head_note}\n{counts} of {kinds.numel()} tiles", fontsize="medium")
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
    """One query's weights (n,) over the keys, masked keys (allowed (n,) False) shaded."""
    if weights.dim() != 1 or allowed.shape != weights.shape:
        raise ValueError(
            f"expected weights and allowed of one shape (n,), got {tuple(weights.shape)} and "
            f"{tuple(allowed.shape)}"
        )
    n = weights.shape[0]
    fig, ax = _figure_and_axes(ax, (8.0, 2.6))
    keys = torch.arange(n).numpy()
    masked_keys = (~allowed.bool()).cpu().numpy()
    top = max(float(weights.max()), 1e-12) * 1.1
    # Collections, not one bar patch per key: fast at n = 4096 (the explorer redraws this).
    ax.fill_between(
        keys, 0, top, where=masked_keys, step="mid", color="#e6e6e6", lw=0, label="masked key"
    )
    ax.vlines(keys, 0, weights.detach().float().cpu().numpy(), color=ALLOWED_COLOR, label="weight")
    ax.axvline(query, color="#e15759", lw=1, label=f"query {query}")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, top)
    ax.set_xlabel("key j")
    ax.set_ylabel("weight")
    ax.legend(loc="upper right", fontsize="small")
    heading = title or f"attention weights of query {query}"
    ax.set_title(f"{heading}: {int(allowed.sum())} of {n} keys allowed", fontsize="medium")
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
