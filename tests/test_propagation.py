"""Multi-layer propagation against an independent breadth-first search over p.mask.

The reference never touches propagation.py: it reads the materialized mask (any head), adds
the residual self-loop, and runs a plain Python BFS from every source to get the number of
layers information needs from j to i. Reachability after L layers is then distance <= L,
and layers_to_connect is the largest distance (math.inf when some pair is never joined).
"""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_attn_edu import blocked, masked, patterns, propagation

SETTINGS = settings(max_examples=60, deadline=None)


# ---- the independent reference ---------------------------------------------------------


def bfs_distances(mask: torch.Tensor) -> list[list[float]]:
    """dist[i][j]: fewest layers for information at j to reach i (i reads k when mask[i, k])."""
    reads = mask if mask.dim() == 2 else mask.any(0)  # a layer: any head lets i read k
    n = reads.shape[0]
    readers = [[] for _ in range(n)]  # readers[k]: positions i that read k
    for i, k in reads.nonzero().tolist():
        readers[k].append(i)
    dist = [[math.inf] * n for _ in range(n)]
    for source in range(n):
        dist[source][source] = 0  # the residual path keeps a position's own state
        queue = deque([source])
        while queue:
            k = queue.popleft()
            for i in readers[k]:
                if dist[i][source] == math.inf:
                    dist[i][source] = dist[k][source] + 1
                    queue.append(i)
    return dist


def reference_reach(dist: list[list[float]], layers: int) -> torch.Tensor:
    return torch.tensor([[d <= layers for d in row] for row in dist])


def reference_layers(dist: list[list[float]]) -> float:
    return max(max(row) for row in dist)


# ---- random patterns: every factory, per-head, causal, unions, intersections, bool masks --


@st.composite
def small_patterns(draw, max_n: int = 70) -> patterns.Pattern:
    n = draw(st.integers(1, max_n))
    window = 2 * draw(st.integers(1, 6))
    kind = draw(
        st.sampled_from(
            ["window", "dilated", "longformer", "bigbird", "causal", "mask", "union", "and"]
        )
    )
    if kind == "window":
        return patterns.sliding_window(n, window)
    if kind == "dilated":
        return patterns.dilated_window(n, window, draw(st.integers(1, 4)))
    if kind == "longformer":
        tokens = draw(st.lists(st.integers(0, n - 1), max_size=3))
        return patterns.longformer(n, window, tuple(tokens))
    if kind == "bigbird":
        block = draw(st.integers(1, 8))
        nbb = math.ceil(n / block)
        global_blocks = draw(st.integers(0, min(2, nbb)))
        window_blocks = draw(st.sampled_from([1, 3]))
        # Every random row must have enough unseen blocks left to draw from.
        free = nbb - global_blocks - window_blocks
        random_blocks = draw(st.integers(0, max(0, min(2, free))))
        heads = draw(st.sampled_from([None, 2, 3]))
        return patterns.bigbird(
            n, block, window_blocks, global_blocks, random_blocks, draw(st.integers(0, 9)), heads
        )
    if kind == "causal":
        return patterns.causal(n)
    if kind == "mask":
        heads = draw(st.sampled_from([None, 2]))
        shape = (n, n) if heads is None else (heads, n, n)
        density = draw(st.sampled_from([0.02, 0.05, 0.2]))
        generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        return patterns.as_pattern(torch.rand(shape, generator=generator) < density)
    a = patterns.sliding_window(n, window)
    b = draw(
        st.sampled_from(
            [
                patterns.causal(n),
                patterns.dilated_window(n, 2, 3),
                patterns.global_tokens(n, [n // 2]),
                patterns.global_tokens(n, []),
                patterns.bigbird(n, 4, 1, 0, 0, num_heads=2),
            ]
        )
    )
    return a | b if kind == "union" else a & b


# Small chunks and tiles so that a 70-token pattern spans several of each.
SIZES = st.tuples(st.sampled_from([1, 2]), st.sampled_from([4, 8, 64]))


@SETTINGS
@given(pattern=small_patterns(), layers=st.integers(0, 5), sizes=SIZES)
def test_reachability_matches_bfs(pattern, layers, sizes):
    dist = bfs_distances(pattern.mask)
    expected = reference_reach(dist, layers)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(propagation, "CHUNK_WORDS", sizes[0])
        mp.setattr(propagation, "_GENERIC_BLOCK", sizes[1])
        got = propagation.reachability(pattern, layers)
        fractions = propagation.fraction_reachable(pattern, layers)
        position = pattern.seq_len // 3
        field = propagation.receptive_field(pattern, position, layers)
    assert got.dtype == torch.bool and got.shape == expected.shape
    assert torch.equal(got, expected)
    per_layer = [reference_reach(dist, layer).double().mean() for layer in range(layers + 1)]
    torch.testing.assert_close(fractions, torch.stack(per_layer))
    assert field.shape == (layers + 1, pattern.seq_len)
    for layer in range(layers + 1):
        assert torch.equal(field[layer], reference_reach(dist, layer)[position])


@SETTINGS
@given(pattern=small_patterns(), sizes=SIZES)
def test_layers_to_connect_matches_bfs(pattern, sizes):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(propagation, "CHUNK_WORDS", sizes[0])
        mp.setattr(propagation, "_GENERIC_BLOCK", sizes[1])
        got = propagation.layers_to_connect(pattern)
    assert got == reference_layers(bfs_distances(pattern.mask))


@pytest.mark.parametrize("n", [1, 2, 17, 100, 1000, 16384])
@pytest.mark.parametrize("window", [2, 8, 32, 512])
def test_layers_to_connect_sliding_window_closed_form(n, window):
    # Each layer widens the field by w/2 on each side: ceil((n - 1) / (w / 2)) layers.
    expected = math.ceil((n - 1) / (window // 2))
    assert propagation.layers_to_connect(patterns.sliding_window(n, window)) == expected


@pytest.mark.parametrize("n,window,layers", [(300, 8, 7), (2500, 32, 24)])
def test_window_layer_by_layer_agrees_with_closed_form(n, window, layers):
    # A union with a sub-window allows the same pairs but takes the layer-by-layer path.
    stacked = patterns.sliding_window(n, window) | patterns.sliding_window(n, 2)
    d = torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1)
    expected = d.abs() <= layers * window // 2
    assert torch.equal(propagation.reachability(stacked, layers), expected)
    assert torch.equal(
        propagation.reachability(patterns.sliding_window(n, window), layers), expected
    )


def test_causal_information_only_flows_forward():
    n = 50
    for pattern in (patterns.causal(n), patterns.sliding_window(n, 8) & patterns.causal(n)):
        reach = propagation.reachability(pattern, 60)
        j_after_i = torch.ones(n, n, dtype=torch.bool).triu(1)  # [i, j] with j > i
        assert not reach[j_after_i].any()
        assert reach[~j_after_i].all()
        assert propagation.layers_to_connect(pattern) == math.inf


def test_zero_layers_is_identity_and_reach_grows():
    pattern = patterns.bigbird(96, 8, 3, 0, 1, seed=3) | patterns.dilated_window(96, 2, 5)
    assert torch.equal(propagation.reachability(pattern, 0), torch.eye(96, dtype=torch.bool))
    previous = propagation.reachability(pattern, 0)
    for layers in range(1, 6):
        current = propagation.reachability(pattern, layers)
        assert (current | previous).equal(current)  # never loses what it had
        previous = current


def test_longformer_pitfall_window_32_and_24_layers():
    n = 5001
    window = patterns.sliding_window(n, 32)
    assert not propagation.reachability(window, 24)[5000, 0]  # 24 * 16 = 384 < 5000
    assert propagation.layers_to_connect(window) == math.ceil(5000 / 16)
    assert propagation.layers_to_connect(patterns.longformer(n, 32, (0,))) == 2
    assert propagation.receptive_field(patterns.longformer(n, 32, (0,)), 5000, 2)[2].all()


@pytest.mark.parametrize(
    "pattern",
    [
        patterns.longformer(40, 4, (17,)),
        patterns.bigbird(40, 4, 3, 0, 1, seed=2, num_heads=2),
        patterns.sliding_window(40, 4) & patterns.causal(40),
        patterns.dilated_window(40, 4, 3),
    ],
    ids=["longformer", "bigbird-per-head", "causal-window", "dilated"],
)
@pytest.mark.parametrize("layers", [1, 3])
def test_influence_is_zero_exactly_where_unreachable(pattern, layers):
    reach = reference_reach(bfs_distances(pattern.mask), layers)
    measured = propagation.influence(pattern, layers, seed=1)
    assert measured.shape == (40, 40)
    assert (measured[~reach] == 0).all()  # exactly zero, not merely small
    assert (measured[reach] > 0).all()  # random weights: every open path carries signal


def test_influence_through_the_blocked_stage_matches_masked():
    pattern = patterns.longformer(40, 4, (5,))
    via_masked = propagation.influence(pattern, 2, seed=4, attention=masked.attention)
    via_blocked = propagation.influence(
        pattern, 2, seed=4, attention=lambda q, k, v, p: blocked.attention(q, k, v, p, 8)
    )
    torch.testing.assert_close(via_blocked, via_masked)
    assert (via_blocked[~propagation.reachability(pattern, 2)] == 0).all()


def test_bad_arguments_say_what_was_expected():
    pattern = patterns.sliding_window(10, 2)
    with pytest.raises(ValueError, match="layers"):
        propagation.reachability(pattern, -1)
    with pytest.raises(ValueError, match="position"):
        propagation.receptive_field(pattern, 10, 1)
    with pytest.raises(TypeError, match="Pattern or a bool"):
        propagation.layers_to_connect([[True]])
