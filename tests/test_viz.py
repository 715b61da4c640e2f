"""viz: the figures show the data they claim, and pattern_stats counts like a plain tile scan.

Expected values come from the materialized mask (p.mask, itself checked against the
definitions in test_patterns.py), padded and cut into tiles with plain tensor reshapes.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from sparse_attn_edu import patterns, viz

CASES = {
    "longformer": lambda: patterns.longformer(37, 6, (0, 20)),
    "window&causal": lambda: patterns.sliding_window(30, 8) & patterns.causal(30),
    "bigbird/heads": lambda: patterns.bigbird(45, 8, 3, 1, 2, seed=1, num_heads=3),
    "dense": lambda: patterns.dense(19),
    "tensor": lambda: torch.rand(2, 23, 23, generator=torch.Generator().manual_seed(0)) < 0.2,
}


def mask3(p) -> torch.Tensor:
    """(H', n, n) token mask of a pattern or bool tensor."""
    m = p if isinstance(p, torch.Tensor) else p.mask
    return m if m.dim() == 3 else m.unsqueeze(0)


def tile_counts(mask: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed pairs and token pairs per tile, (H', nb, nb) each, by padding and reshaping."""
    h, n = mask.shape[0], mask.shape[-1]
    nb = math.ceil(n / bs)
    pad = nb * bs - n
    allowed = torch.nn.functional.pad(mask.long(), (0, pad, 0, pad))
    inside = torch.nn.functional.pad(torch.ones(1, n, n, dtype=torch.long), (0, pad, 0, pad))
    allowed = allowed.view(h, nb, bs, nb, bs).sum((2, 4))
    size = inside.view(1, nb, bs, nb, bs).sum((2, 4)).expand(h, nb, nb)
    return allowed, size


def kinds_of(mask: torch.Tensor, bs: int) -> torch.Tensor:
    allowed, size = tile_counts(mask, bs)
    return torch.where(allowed == 0, 0, torch.where(allowed == size, 2, 1))


def tile_tint(ax, n: int, bs: int) -> np.ndarray:
    """(nb, nb, 4) colours of the tint over the token mask, checking each covers its tile."""
    tint = ax.collections[0]  # the overlay: tint, hatching, grid lines
    nb = math.ceil(n / bs)
    edges = [min(b * bs, n) - 0.5 for b in range(nb + 1)]
    corners = np.array([p.vertices[:4] for p in tint.get_paths()])  # (nb * nb, 4, 2)
    assert corners.shape == (nb * nb, 4, 2)
    for t, (qb, kb) in enumerate(np.ndindex(nb, nb)):
        np.testing.assert_allclose(corners[t, :, 0].min(), edges[kb])
        np.testing.assert_allclose(corners[t, :, 0].max(), edges[kb + 1])
        np.testing.assert_allclose(corners[t, :, 1].min(), edges[qb])
        np.testing.assert_allclose(corners[t, :, 1].max(), edges[qb + 1])
    return np.asarray(tint.get_facecolor()).reshape(nb, nb, 4)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "viz must not open pyplot figures"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("block_size", [4, 7, 64])
def test_pattern_stats_match_tile_scan(name, block_size):
    p = CASES[name]()
    m = mask3(p)  # (H', n, n)
    h, n = m.shape[0], m.shape[-1]
    allowed, size = tile_counts(m, block_size)
    active = allowed > 0
    d = 32
    for head in [None, *range(h)]:
        s = viz.pattern_stats(p, block_size=block_size, head_dim=d, head=head)
        sel = slice(None) if head is None else slice(head, head + 1)
        heads = h if head is None else 1
        computed = int(size[sel][active[sel]].sum())
        assert s["seq_len"] == n and s["num_heads"] == heads
        assert s["num_blocks"] == math.ceil(n / block_size)
        assert s["density"] == pytest.approx(float(m[sel].float().mean()))
        assert s["active_blocks"] == int(active[sel].sum())
        assert s["full_blocks"] == int((allowed[sel] == size[sel]).sum())
        assert s["partial_blocks"] == int((active[sel] & (allowed[sel] < size[sel])).sum())
        assert s["dense_flops"] == 4 * d * heads * n * n
        assert s["sparse_flops"] == 4 * d * int(m[sel].sum())
        assert s["block_flops"] == 4 * d * computed
        assert s["dense_score_bytes"] == 4 * heads * n * n
        assert s["block_score_bytes"] == 4 * computed
        assert s["ideal_speedup"] == pytest.approx(heads * n * n / computed)


def test_pattern_stats_by_hand():
    # sliding_window(8, 2) in 2 x 2 tiles: 4 full diagonal tiles (offsets -1..1) and
    # 6 partial next-diagonal tiles holding one allowed pair each; 22 allowed pairs.
    s = viz.pattern_stats(patterns.sliding_window(8, 2), block_size=2, head_dim=1)
    assert (s["full_blocks"], s["partial_blocks"], s["active_blocks"]) == (4, 6, 10)
    assert s["density"] == 22 / 64
    assert (s["dense_flops"], s["sparse_flops"], s["block_flops"]) == (256, 88, 160)
    assert s["ideal_speedup"] == 64 / 40


@pytest.mark.parametrize("name", CASES)
def test_plot_mask_shows_the_mask(name):
    p = CASES[name]()
    m = mask3(p)
    head = m.shape[0] - 1
    fig = viz.plot_mask(p, head=head)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), m[head].numpy())
    assert f"density {m[head].float().mean().item():.1%}" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()


@pytest.mark.parametrize("block_size", [3, 8, 50])
def test_plot_mask_tiles_are_the_block_kinds(block_size):
    p = CASES["bigbird/heads"]()
    m = mask3(p)
    fig = viz.plot_mask(p, head=2, block_size=block_size)
    ax = fig.axes[0]
    kinds = kinds_of(m, block_size)[2]  # (nb, nb)
    colors = tile_tint(ax, m.shape[-1], block_size)
    for kind in range(3):
        rgb = to_rgba(viz.KIND_COLORS[kind])[:3]
        np.testing.assert_allclose(
            colors[kinds.numpy() == kind][:, :3],
            np.broadcast_to(rgb, (int((kinds == kind).sum()), 3)),
        )
    active, nb = int((kinds > 0).sum()), kinds.shape[-1]
    assert f"{active}/{nb * nb} tiles" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("partial" in t for t in labels) and any("empty" in t for t in labels)


def test_plot_block_kinds_image_and_counts():
    p = CASES["longformer"]()
    fig = viz.plot_block_kinds(p, 8, title="Longformer")
    ax = fig.axes[0]
    kinds = kinds_of(mask3(p), 8)[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), kinds.numpy())
    title = ax.get_title()
    for kind, name in enumerate(("empty", "partial", "full")):
        assert f"{int((kinds == kind).sum())} {name}" in title
    assert len(fig.axes) == 2, "a colour bar names the kinds"


def test_plot_attention_weights():
    w = torch.softmax(torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)), -1)
    fig = viz.plot_attention_weights(w, batch=1, head=2)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), w[1, 2].numpy())
    assert "batch 1, head 2" in fig.axes[0].get_title()
    assert len(fig.axes) == 2, "colour bar"
    fig = viz.plot_attention_weights(w[0, 0].requires_grad_())
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), w[0, 0].numpy())
    with pytest.raises(ValueError, match=r"expected weights of shape \(B, H, n, n\) or \(n, n\)"):
        viz.plot_attention_weights(w[0])


def test_plot_query_weights_bars():
    weights = torch.tensor([0.5, 0.0, 0.5, 0.0])
    allowed = torch.tensor([True, False, True, False])
    fig = viz.plot_query_weights(weights, allowed, query=2)
    stems = fig.axes[0].lines[0].get_xydata()  # (j, 0), (j, weight), gap per allowed key
    np.testing.assert_allclose(
        stems.reshape(-1, 3, 2)[:, :2], [[(0, 0), (0, 0.5)], [(2, 0), (2, 0.5)]]
    )
    assert np.isnan(stems[2::3]).all()
    assert "2 of 4 keys allowed" in fig.axes[0].get_title()


def test_draws_into_a_given_axes():
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert viz.plot_mask(patterns.causal(8), block_size=4, ax=left) is fig
    assert viz.plot_block_kinds(patterns.causal(8), 4, ax=right) is fig
    assert left.images and right.images


def test_bad_head():
    p = patterns.bigbird(32, 8, 1, 1, 1, num_heads=2)
    with pytest.raises(ValueError, match=r"expected head in \[0, 2\), got 2"):
        viz.plot_mask(p, head=2)
    with pytest.raises(ValueError, match=r"expected head in \[0, 2\), got 5"):
        viz.pattern_stats(p, 8, head=5)


def test_plot_growth_lines():
    sizes = [100, 200, 400]
    fig = viz.plot_growth(sizes, {"dense": [1.0, 4.0, 16.0], "masked": [2.0, 8.0, 32.0]}, "ms")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["masked"].get_ydata(), [2.0, 8.0, 32.0])
    np.testing.assert_allclose(lines[r"$\propto n^{2}$"].get_ydata(), [1.0, 4.0, 16.0])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="expected 3 values for 'x'.*got 2"):
        viz.plot_growth(sizes, {"x": [1.0, 2.0]}, "ms")


def test_live_plots_redraw_in_place():
    # The explorer keeps one MaskPlot / BlockKindsPlot and updates it: after each update it
    # must show exactly the new pattern -- also across sizes and tile grids (the same
    # overlay artists get the new tiles).
    fig = Figure()
    left, right = fig.subplots(1, 2)
    tokens, tiles = viz.MaskPlot(left), viz.BlockKindsPlot(right)
    steps = [
        ("bigbird/heads", 2, 8),
        ("bigbird/heads", 0, 8),
        ("longformer", 0, 8),
        ("dense", 0, 5),
    ]
    for name, head, bs in steps:
        p = CASES[name]()
        m = mask3(p)
        h = head if m.shape[0] > 1 else 0
        n = m.shape[-1]
        tokens.update(p, head=head, block_size=bs)
        tiles.update(p, bs, head=head)
        np.testing.assert_array_equal(np.asarray(left.images[0].get_array()), m[h].numpy())
        assert len(left.images) == 1 and left.get_xlim() == (-0.5, n - 0.5)
        kinds = kinds_of(m, bs)[h]
        assert len(left.collections) == 3, "one overlay, updated in place"
        colors = tile_tint(left, n, bs)
        for kind in range(3):
            rgb = to_rgba(viz.KIND_COLORS[kind])[:3]
            np.testing.assert_allclose(
                colors[kinds.numpy() == kind][:, :3],
                np.broadcast_to(rgb, (int((kinds == kind).sum()), 3)),
            )
        hatched = left.collections[1].get_paths()  # one hatched rectangle per partial tile
        assert len(hatched) == int((kinds == 1).sum())
        assert f"density {m[h].float().mean().item():.1%}" in left.get_title()
        np.testing.assert_array_equal(np.asarray(right.images[0].get_array()), kinds.numpy())
        assert f"{int((kinds == 2).sum())} full" in right.get_title()
    assert len(fig.axes) == 3, "one colour bar, made once"


def test_block_kinds_in_tokens_keep_their_axes_across_block_sizes():
    ax = Figure().subplots()
    plot = viz.BlockKindsPlot(ax, in_tokens=True)
    p = CASES["bigbird/heads"]()  # n = 45
    for bs in (8, 16, 5):
        plot.update(p, bs, head=1)
        kinds = kinds_of(mask3(p), bs)[1]
        nb = kinds.shape[-1]
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), kinds.numpy())
        # pixel b covers tokens b * bs .. (b + 1) * bs - 1; the axes stop at token n - 1
        assert ax.images[0].get_extent() == [-0.5, nb * bs - 0.5, nb * bs - 0.5, -0.5]
        assert ax.get_xlim() == (-0.5, 44.5) and ax.get_ylim() == (44.5, -0.5)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("key j", "query i")
        assert f"block {bs}" in ax.get_title() and f"of {nb * nb} tiles" in ax.get_title()


def test_query_weights_redraw_in_place():
    ax = Figure().subplots()
    plot = viz.QueryWeightsPlot(ax)
    gen = torch.Generator().manual_seed(0)
    for n, query in [(12, 3), (30, 29)]:
        allowed = torch.rand(n, generator=gen) < 0.5
        allowed[query] = True
        weights = torch.softmax(torch.randn(n, generator=gen).masked_fill(~allowed, -torch.inf), 0)
        plot.update(weights, allowed, query)
        stems = {int(x): top for (x, _), (_, top), _ in plot.stems.get_xydata().reshape(-1, 3, 2)}
        assert sorted(stems) == allowed.nonzero().flatten().tolist()
        np.testing.assert_allclose([stems[j] for j in sorted(stems)], weights[allowed].numpy())
        # The grey shade covers exactly the masked keys' cells [j - 0.5, j + 0.5].
        shaded = [
            j for j in range(n) if any(p.contains_point((j, 1e-9)) for p in plot.shade.get_paths())
        ]
        assert shaded == (~allowed).nonzero().flatten().tolist()
        assert ax.get_ylim()[1] == pytest.approx(1.1 * float(weights.max()))
        assert plot.query_line.get_xdata()[0] == query
        assert f"{int(allowed.sum())} of {n} keys allowed" in ax.get_title()
