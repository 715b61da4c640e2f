"""The mask explorer's logic: set controls as a user would, check what the views show.

Expected masks, counts and reaches come from the written definitions (brute-force loops
over i, j, the Longformer receptive-field rule), and the weights from stage 2 run on the
whole sequence -- never from the explorer itself.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_attn_edu import masked, patterns
from sparse_attn_edu.widgets import (
    DPI,
    MaskExplorer,
    build_pattern,
    mask_mod_source,
    python_source,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def brute_force(n: int, allowed) -> torch.Tensor:
    """Bool (n, n) from a per-pair predicate, one Python call per pair."""
    return torch.tensor([[bool(allowed(i, j)) for j in range(n)] for i in range(n)])


def window_ref(n: int, w: int, causal: bool = False, globals_: int = 0, dilation: int = 1):
    half = w // 2

    def allowed(i, j):
        near = abs(i - j) <= half * dilation and (i - j) % dilation == 0
        ok = near or i < globals_ or j < globals_
        return ok and (j <= i or not causal)

    return brute_force(n, allowed)


@pytest.fixture
def small():
    """A sliding-window explorer at a size brute force handles."""
    explorer = MaskExplorer(
        pattern="sliding_window", seq_len=96, window=8, block_size=16, layers=2, query=40
    )
    explorer.wait()
    return explorer


def drawn_token_mask(explorer: MaskExplorer) -> torch.Tensor:
    """The token mask image as drawn in the figure (left axes)."""
    image = explorer.figures["mask"].axes[0].images[0]
    return torch.from_numpy(image.get_array().data.astype(bool))


def views_changed(explorer: MaskExplorer, change) -> set[str]:
    """The views whose picture differs after `change()` has run and the explorer settled."""

    def images() -> dict[str, bytes]:
        names = ("mask", "weights", "reach")
        return {name: getattr(explorer, f"{name}_image").value for name in names}

    before = images()
    change()
    explorer.wait()
    return {name for name, png in images().items() if png != before[name]}


def test_first_draw_renders_every_view(small):
    assert small.error == ""
    for image in (small.mask_image, small.reach_image, small.weights_image):
        assert bytes(image.value).startswith(PNG_MAGIC)
    assert "density" in small.stats_html.value
    assert "sliding_window(96, window=8)" in small.export.value


def test_token_mask_and_stats_follow_the_window(small):
    assert torch.equal(drawn_token_mask(small), window_ref(96, 8))
    before_png, before_stats = small.mask_image.value, small.stats_html.value

    small.controls["window"].value = 20
    expected = window_ref(96, 20)
    assert torch.equal(drawn_token_mask(small), expected)
    assert small.mask_image.value != before_png
    assert small.stats_html.value != before_stats
    assert small.stats["density"] == pytest.approx(expected.sum().item() / 96**2)
    assert f"{100 * expected.sum().item() / 96**2:.2f} %" in small.stats_html.value


def test_block_counts_against_a_tile_scan(small):
    with small.hold():
        small.controls["window"].value = 20
        small.controls["causal"].value = True
    mask = window_ref(96, 20, causal=True)
    tiles = mask.view(6, 16, 6, 16).sum((1, 3))  # allowed pairs per 16 x 16 tile
    assert small.stats["active_blocks"] == int((tiles > 0).sum())
    assert small.stats["full_blocks"] == int((tiles == 256).sum())
    assert small.stats["partial_blocks"] == int(((tiles > 0) & (tiles < 256)).sum())
    assert small.stats["ideal_speedup"] == pytest.approx(36 / int((tiles > 0).sum()))
    kinds = small.figures["mask"].axes[1].images[0].get_array()  # the block kinds map
    assert torch.equal(
        torch.from_numpy(kinds.data.astype(int)), (tiles > 0).int() + (tiles == 256).int()
    )


def test_large_n_draws_a_labelled_zoom():
    explorer = MaskExplorer(pattern="longformer", seq_len=2048, window=64, global_tokens=3)
    zoom = drawn_token_mask(explorer)
    assert zoom.shape == (512, 512)
    assert torch.equal(zoom, window_ref(512, 64, globals_=3))
    assert "tokens 0..511 of 2048" in explorer.figures["mask"].axes[0].get_title()
    kinds = explorer.figures["mask"].axes[1].images[0].get_array()
    assert kinds.shape == (32, 32)  # every block of the whole sequence, block 64


def test_reach_follows_the_receptive_field_rule(small):
    # A window of width w reaches w/2 further each layer (Longformer, section 3.1).
    for layers in (1, 3):
        small.controls["layers"].value = layers
        small.wait()
        expected = torch.tensor(
            [[abs(40 - j) <= layer * 4 for j in range(96)] for layer in range(layers + 1)]
        )
        assert torch.equal(small.receptive, expected)
        pairs = sum(1 for i in range(96) for j in range(96) if abs(i - j) <= layers * 4)
        assert float(small.reach_fractions[-1]) == pytest.approx(pairs / 96**2)
    assert small.connect_layers == math.ceil(95 / 4)
    assert f"after <b>{math.ceil(95 / 4)}</b> layers" in small.reach_html.value


def test_global_tokens_connect_in_two_layers_and_dilation_never(small):
    with small.hold():
        small.controls["pattern"].value = "longformer"
        small.controls["global_tokens"].value = 1
    small.wait()
    assert small.connect_layers == 2
    small.controls["pattern"].value = "dilated_window"  # only even offsets: never
    small.wait()
    assert small.connect_layers == math.inf
    assert "never" in small.reach_html.value


def test_layers_redraws_reach_only(small):
    assert views_changed(small, lambda: setattr(small.controls["layers"], "value", 4)) == {"reach"}


def test_query_weights_match_stage_2():
    explorer = MaskExplorer(pattern="bigbird", seq_len=160, block_size=16, head=2, query=70)
    q, k = explorer.random_qk(160)
    v = torch.zeros_like(q)
    mask = patterns.bigbird(160, 16, 3, 2, 3, seed=0, num_heads=4).mask  # (4, n, n)
    _, weights = masked.attention(
        q[None, None], k[None, None], v[None, None], mask[2], return_weights=True
    )  # (1, 1, n, n)
    torch.testing.assert_close(explorer.weights, weights[0, 0, 70])
    assert float(explorer.weights[~mask[2, 70]].abs().sum()) == 0.0
    before = explorer.weights_image.value
    explorer.controls["query"].value = 10
    torch.testing.assert_close(explorer.weights, weights[0, 0, 10])
    assert explorer.weights_image.value != before


def test_random_blocks_and_seed_change_the_picture():
    explorer = MaskExplorer(pattern="bigbird", seq_len=256, block_size=16, random_blocks=1)
    before_png, before_density = explorer.mask_image.value, explorer.stats["density"]
    explorer.controls["random_blocks"].value = 4
    # 3 more random key blocks of 16 x 16 in each of the 16 - 2 non-global query blocks.
    assert explorer.stats["density"] == pytest.approx(before_density + 3 * 14 * 256 / 256**2)
    assert explorer.mask_image.value != before_png
    before_png = explorer.mask_image.value
    explorer.controls["seed"].value = 7
    assert explorer.mask_image.value != before_png


def test_query_slider_stays_on_the_sequence(small):
    small.controls["seq_len"].value = 32
    assert small.controls["query"].max == 31
    assert small.controls["query"].value <= 31
    assert small.error == ""


def test_a_query_past_the_default_range_is_kept_when_seq_len_allows_it():
    # The slider's default range ends at 1023 (seq_len 1024).
    explorer = MaskExplorer(seq_len=2048, query=2000, pattern="sliding_window", window=8)
    try:
        assert explorer.controls["query"].value == 2000
        # The weights view is of query 2000: its allowed keys are 1996..2004.
        allowed = (explorer.weights > 0).nonzero().flatten().tolist()
        assert allowed == list(range(1996, 2005)), allowed
    finally:
        explorer.close()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"window": 7}, "even"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 100_000}, "seq_len"),
        ({"pattern": "longformer", "seq_len": 8, "global_tokens": 20}, "global token"),
        ({"pattern": "bigbird", "seq_len": 64, "block_size": 16, "random_blocks": 8}, "random"),
    ],
)
def test_invalid_settings_show_a_message_and_keep_the_views(small, changes, words):
    before = small.mask_image.value
    with small.hold():
        for name, value in changes.items():
            small.controls[name].value = value
    assert words in small.error
    assert words in small.message.value and "&#9888;" in small.message.value
    assert small.mask_image.value == before
    with small.hold():  # back to something valid: the message goes away
        small.controls["pattern"].value = "sliding_window"
        small.controls["seq_len"].value = 64
        small.controls["window"].value = 8
    assert small.error == "" and "&#9888;" not in small.message.value


def test_controls_shown_are_the_patterns_own(small):
    def shown():
        return {n for n, c in small.controls.items() if c.layout.display != "none"}

    assert {"window"} <= shown() and not {"random_blocks", "dilation"} & shown()
    small.controls["pattern"].value = "bigbird"
    assert {"random_blocks", "window_blocks", "seed", "head"} <= shown()
    assert "window" not in shown()


def test_hold_batches_changes_into_one_update(small, monkeypatch):
    calls = []
    update = small._update
    monkeypatch.setattr(small, "_update", lambda: calls.append(1) or update())
    with small.hold():
        small.controls["window"].value = 12
        small.controls["layers"].value = 3
    assert calls == [1]


def test_block_size_of_a_window_redraws_the_tiles_only(small):
    # The pattern, hence its reach and weights, stays the same: only the tiles are redrawn.
    changed = views_changed(small, lambda: setattr(small.controls["block_size"], "value", 32))
    assert changed == {"mask"}
    assert small.stats["num_blocks"] == 3  # ceil(96 / 32)


SETTINGS = [
    dict(pattern="sliding_window", window=10),
    dict(pattern="dilated_window", window=6, dilation=3),
    dict(pattern="longformer", window=8, global_tokens=2),
    dict(pattern="bigbird", window_blocks=3, global_blocks=1, random_blocks=2, seed=3),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chosen", SETTINGS, ids=lambda s: s["pattern"])
def test_exports_rebuild_the_same_mask(chosen, causal):
    explorer = MaskExplorer(seq_len=96, block_size=16, causal=causal, **chosen)
    settings = explorer.settings
    if chosen["pattern"] == "bigbird":
        # Independent: BigBird's layout is a seeded draw, so take the library's, per head.
        reference = explorer.pattern.mask
    else:
        reference = window_ref(
            96, chosen["window"], causal, chosen.get("global_tokens", 0), chosen.get("dilation", 1)
        )

    scope: dict = {}
    exec(python_source(explorer.pattern), scope)
    assert torch.equal(scope["p"].mask, reference)

    scope = {}
    exec(mask_mod_source(settings), scope)  # also builds the FlexAttention BlockMask
    q, kv = torch.arange(96).view(-1, 1), torch.arange(96).view(1, -1)
    heads = range(4) if chosen["pattern"] == "bigbird" else [0]
    from_mod = torch.stack([scope["mask_mod"](0, torch.tensor(h), q, kv) for h in heads])
    assert torch.equal(from_mod.squeeze(0), reference)
    assert scope["block_mask"].shape[-2:] == (96, 96)


def test_build_pattern_matches_the_factories():
    settings = dict(
        pattern="longformer", seq_len=64, window=8, global_tokens=2, causal=True, block_size=16
    )
    expected = patterns.longformer(64, 8, (0, 1)) & patterns.causal(64)
    assert torch.equal(build_pattern(settings).mask, expected.mask)


def test_unknown_control_is_an_error():
    with pytest.raises(ValueError, match="control names"):
        MaskExplorer(windw=8)


def test_close_closes_every_widget(small):
    small.close()
    parts = [small.widget, small.mask_image, small.export, *small.controls.values()]
    assert all(part.comm is None for part in parts)
    assert small.controls["window"].layout.comm is None


def assert_views_show_a_full_draw(explorer: MaskExplorer, when: str) -> None:
    """Each view's PNG shows what matplotlib's own full draw of the same figure shows.

    Only where a tick mark meets an axes frame may a few pixels differ slightly: there the
    two are drawn in the other order.
    """
    for view in ("mask", "reach", "weights"):
        shown = np.asarray(Image.open(io.BytesIO(getattr(explorer, f"{view}_image").value)))
        buf = io.BytesIO()
        explorer.figures[view].savefig(buf, format="png", dpi=DPI)
        full = np.asarray(Image.open(buf).convert("RGB"))
        assert shown.shape == full.shape
        diff = np.abs(shown.astype(int) - full.astype(int)).max(-1)
        assert (diff > 0).sum() <= 20 and diff.max() <= 32, f"{view} after {when}"


def test_views_show_what_a_full_draw_shows():
    # Views are updated by redrawing only what changed over kept layers (blitting; the
    # ticks of axes whose limits changed are erased and drawn again, and kept for a few
    # limits). After every change each view must still show what a full draw shows.
    explorer = MaskExplorer(pattern="bigbird", seq_len=640, block_size=32, query=100)
    changes = [("random_blocks", 4), ("seed", 3), ("head", 2), ("query", 600), ("layers", 3)]
    changes += [("seq_len", 1000), ("pattern", "longformer"), ("query", 5), ("block_size", 64)]
    changes += [("seq_len", 300), ("layers", 5), ("seq_len", 1000), ("block_size", 16)]
    for name, value in changes:
        explorer.controls[name].value = value
        explorer.wait()
        assert_views_show_a_full_draw(explorer, f"{name}={value}")


def kinds_axes_image(explorer: MaskExplorer):
    """The block kinds map (right axes of the mask view) and its image."""
    ax = explorer.figures["mask"].axes[1]
    return ax, ax.images[0]


def test_block_size_recolours_the_tiles_and_keeps_the_axes():
    # The kinds map counts tokens on its axes, so another block size changes its tiles but
    # neither its limits nor its tick labels: no tick label is drawn again.
    explorer = MaskExplorer(pattern="longformer", seq_len=200, window=16, global_tokens=1)
    explorer.wait()  # the first reachability is drawn on the worker thread: let it finish
    ax, image = kinds_axes_image(explorer)
    limits = ax.get_xlim(), ax.get_ylim()
    before = explorer.mask_image.value
    drawn = []  # every axis (ticks, tick labels, axis label) of every view, when drawn
    for figure in explorer.figures.values():
        for axis in (a for axes in figure.axes for a in (axes.xaxis, axes.yaxis)):
            axis.draw = lambda renderer, axis=axis: drawn.append(axis)
    explorer.controls["block_size"].value = 32
    explorer.wait()
    assert drawn == []
    assert (ax.get_xlim(), ax.get_ylim()) == limits == ((-0.5, 199.5), (199.5, -0.5))
    assert explorer.mask_image.value != before

    # The new tiles, from a tile scan of the written definition: 7 blocks of 32, the
    # last one 8 tokens, each pixel spanning its 32 tokens (cut at n by the axes).
    mask = window_ref(200, 16, globals_=1)
    padded = torch.zeros(224, 224, dtype=torch.long)
    padded[:200, :200] = mask
    inside = torch.zeros(224, 224, dtype=torch.long)
    inside[:200, :200] = 1
    allowed = padded.view(7, 32, 7, 32).sum((1, 3))
    size = inside.view(7, 32, 7, 32).sum((1, 3))
    expected = (allowed > 0).int() + (allowed == size).int()
    assert torch.equal(torch.from_numpy(image.get_array().data.astype(int)), expected)
    assert image.get_extent() == [-0.5, 223.5, 223.5, -0.5]
    assert "block 32" in ax.get_title()
    assert f"{int((expected == 1).sum())} partial" in ax.get_title()
    # The overlay on the token mask: 7 x 7 tiles, the partial ones hatched.
    tint, hatches, grid = explorer.figures["mask"].axes[0].collections
    assert len(tint.get_paths()) == 49
    assert len(hatches.get_paths()) == int((expected == 1).sum())
    assert len(grid.get_segments()) == 2 * 8
    explorer.close()


def test_seq_len_moves_every_token_axis_to_the_new_n():
    explorer = MaskExplorer(pattern="sliding_window", seq_len=300, window=8, block_size=64)
    for n in (1000, 4096, 300, 1000):
        explorer.controls["seq_len"].value = n
        explorer.wait()
        tokens, kinds = explorer.figures["mask"].axes[:2]
        zoom = min(n, 512)
        assert tokens.get_xlim() == (-0.5, zoom - 0.5) and tokens.get_ylim() == (zoom - 0.5, -0.5)
        assert kinds.get_xlim() == (-0.5, n - 0.5) and kinds.get_ylim() == (n - 0.5, -0.5)
        nb = math.ceil(n / 64)
        assert kinds.images[0].get_array().shape == (nb, nb)
        assert kinds.images[0].get_extent()[1] == nb * 64 - 0.5
        assert f"all {n} tokens" in kinds.get_title()
        reach = explorer.figures["reach"].axes[0]
        weights = explorer.figures["weights"].axes[0]
        for ax in (kinds, reach, weights):
            assert ax.get_xlim() == (-0.5, n - 0.5)
            ticks = ax.xaxis.get_majorticklocs()
            shown = ticks[(ticks >= -0.5) & (ticks <= n - 0.5)]
            assert 3 <= len(shown) <= 6 and shown[0] == 0 and shown[-1] > n / 2
    explorer.close()
