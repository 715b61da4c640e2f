"""The pattern model against its definitions in DESIGN.md.

Every expected mask here comes from the written definition, never from the code under test:
small cases are spelled out by hand, and a brute-force predicate (plain Python loops over
i, j) checks random parameters. Block kinds are checked against a tile-by-tile scan of the
materialized mask.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparse_attn_edu import patterns

SETTINGS = settings(max_examples=40, deadline=None)


# ---- independent references ---------------------------------------------------------


def brute_force(n: int, allowed) -> torch.Tensor:
    """Bool (n, n) from a per-pair predicate allowed(i, j), one Python call per pair."""
    return torch.tensor([[bool(allowed(i, j)) for j in range(n)] for i in range(n)])


def ref_sliding(n: int, window: int) -> torch.Tensor:
    return brute_force(n, lambda i, j: abs(i - j) <= window // 2)


def ref_dilated(n: int, window: int, dilation: int) -> torch.Tensor:
    return brute_force(
        n, lambda i, j: abs(i - j) <= (window // 2) * dilation and (i - j) % dilation == 0
    )


def ref_longformer(n: int, window: int, globals_: tuple[int, ...]) -> torch.Tensor:
    return brute_force(n, lambda i, j: abs(i - j) <= window // 2 or i in globals_ or j in globals_)


def ref_kinds(mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Scan every tile of a (n, n) or (H, n, n) mask: 0 none, 1 some, 2 all pairs allowed."""
    n = mask.shape[-1]
    nb = math.ceil(n / block_size)
    out = torch.empty(mask.shape[:-2] + (nb, nb), dtype=torch.int8)
    for qb in range(nb):
        for kb in range(nb):
            tile = mask[
                ...,
                qb * block_size : (qb + 1) * block_size,
                kb * block_size : (kb + 1) * block_size,
            ]
            some, every = tile.flatten(-2).any(-1), tile.flatten(-2).all(-1)
            out[..., qb, kb] = torch.where(every, 2, torch.where(some, 1, 0)).to(torch.int8)
    return out


def bigbird_fixed_blocks(nbb: int, window_blocks: int, global_blocks: int) -> torch.Tensor:
    """Block pairs every BigBird head sees: the window band plus global rows and columns."""
    return brute_force(
        nbb,
        lambda r, c: abs(r - c) <= window_blocks // 2 or r < global_blocks or c < global_blocks,
    )


def expand_blocks(layout: torch.Tensor, block_size: int, n: int) -> torch.Tensor:
    """Token mask of a block layout (..., nbb, nbb): pair (i, j) allowed iff its block is."""
    big = layout.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)
    return big[..., :n, :n]


# ---- strategies ---------------------------------------------------------------------


@st.composite
def bigbird_args(draw, max_n: int = 48):
    n = draw(st.integers(1, max_n))
    block_size = draw(st.integers(1, 12))
    nbb = math.ceil(n / block_size)
    window_blocks = draw(st.sampled_from([1, 3, 5]))
    global_blocks = draw(st.integers(0, min(nbb, 2)))
    fixed = bigbird_fixed_blocks(nbb, window_blocks, global_blocks)
    left = [int((~fixed[r]).sum()) for r in range(global_blocks, nbb)]
    random_blocks = draw(st.integers(0, min(left))) if left else draw(st.integers(0, 2))
    num_heads = draw(st.sampled_from([None, 1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        seq_len=n,
        block_size=block_size,
        window_blocks=window_blocks,
        global_blocks=global_blocks,
        random_blocks=random_blocks,
        seed=seed,
        num_heads=num_heads,
    )


@st.composite
def leaf_patterns(draw, n: int):
    """(pattern, reference mask) for one factory at seq_len n."""
    kind = draw(
        st.sampled_from(
            ["sliding", "dilated", "longformer", "causal", "dense", "bigbird", "tensor"]
        )
    )
    window = 2 * draw(st.integers(1, n + 1))
    if kind == "sliding":
        return patterns.sliding_window(n, window), ref_sliding(n, window)
    if kind == "dilated":
        dilation = draw(st.integers(1, 4))
        return patterns.dilated_window(n, window, dilation), ref_dilated(n, window, dilation)
    if kind == "longformer":
        # Up to 24 tokens: past 8 runs of consecutive tokens membership is a table lookup.
        globals_ = tuple(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=24)))
        return patterns.longformer(n, window, globals_), ref_longformer(n, window, globals_)
    if kind == "causal":
        return patterns.causal(n), brute_force(n, lambda i, j: j <= i)
    if kind == "dense":
        return patterns.dense(n), brute_force(n, lambda i, j: True)
    if kind == "tensor":
        heads = draw(st.sampled_from([None, 2]))
        shape = (n, n) if heads is None else (heads, n, n)
        seed = draw(st.integers(0, 1000))
        mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3
        return patterns.as_pattern(mask), mask
    # bigbird without random blocks (those are checked in test_bigbird_matches_definition):
    # its reference is the window band and global blocks expanded to tokens.
    block_size = draw(st.integers(1, 8))
    nbb = math.ceil(n / block_size)
    window_blocks, global_blocks = draw(st.sampled_from([1, 3])), draw(st.integers(0, min(1, nbb)))
    p = patterns.bigbird(
        n,
        block_size,
        window_blocks,
        global_blocks,
        random_blocks=0,
        num_heads=draw(st.sampled_from([None, 2])),
    )
    ref = expand_blocks(bigbird_fixed_blocks(nbb, window_blocks, global_blocks), block_size, n)
    if p.num_heads:
        ref = ref.expand(p.num_heads, n, n)
    return p, ref


@st.composite
def any_pattern(draw, max_n: int = 24):
    """A leaf, a union or an intersection, with its reference mask."""
    n = draw(st.integers(1, max_n))
    p, ref = draw(leaf_patterns(n))
    op = draw(st.sampled_from([None, "|", "&"]))
    if op is None:
        return p, ref
    p2, ref2 = draw(leaf_patterns(n))
    if p.num_heads and p2.num_heads and p.num_heads != p2.num_heads:
        return p, ref
    if op == "|":
        return p | p2, ref | ref2
    return p & p2, ref & ref2


# ---- hand-checked cases -------------------------------------------------------------


def rows(*lines: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in line] for line in lines])


def test_sliding_window_by_hand():
    # window 4 = 2 keys each side plus the token itself
    expected = rows(
        "11100000",
        "11110000",
        "11111000",
        "01111100",
        "00111110",
        "00011111",
        "00001111",
        "00000111",
    )
    assert torch.equal(patterns.sliding_window(8, 4).mask, expected)


def test_dilated_window_by_hand():
    # window 4, dilation 2: offsets 0, +-2, +-4
    expected = rows(
        "10101000",
        "01010100",
        "10101010",
        "01010101",
        "10101010",
        "01010101",
        "00101010",
        "00010101",
    )
    assert torch.equal(patterns.dilated_window(8, 4, 2).mask, expected)


def test_longformer_by_hand():
    # window 2 (one key each side) plus token 0 global in both directions
    expected = rows(
        "111111",
        "111000",
        "111100",
        "101110",
        "100111",
        "100011",
    )
    assert torch.equal(patterns.longformer(6, 2, global_tokens=(0,)).mask, expected)


def test_causal_and_dense_by_hand():
    assert torch.equal(patterns.causal(4).mask, rows("1000", "1100", "1110", "1111"))
    assert torch.equal(patterns.dense(3).mask, torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("n", [10, 9])
def test_bigbird_without_random_by_hand(n):
    # 5 blocks of 2 (n = 9: the last block holds one token); block 0 global; window 3
    layout = rows(
        "11111",
        "11100",
        "11110",
        "10111",
        "10011",
    )
    p = patterns.bigbird(n, block_size=2, window_blocks=3, global_blocks=1, random_blocks=0)
    assert torch.equal(p.mask, expand_blocks(layout, 2, n))
    assert torch.equal(p.block_layout(2), layout)


def test_block_kinds_by_hand():
    # longformer(8, 2, (0, 1)) in 2 x 2 tiles: block 0 is all global (full row and column);
    # diagonal tiles hold offsets -1..1 (full); next-diagonal tiles hold one allowed offset.
    expected = torch.tensor([[2, 2, 2, 2], [2, 2, 1, 0], [2, 1, 2, 1], [2, 0, 1, 2]])
    p = patterns.longformer(8, 2, global_tokens=(0, 1))
    assert torch.equal(p.block_kinds(2), expected.to(torch.int8))
    assert torch.equal(p.block_layout(2), expected > 0)
    # sliding_window(16, 4) in 4 x 4 tiles: offset +-3 is missing on the diagonal too
    band = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(patterns.sliding_window(16, 4).block_kinds(4), band.to(torch.int8))


def test_union_and_intersection_by_hand():
    w, c = patterns.sliding_window(4, 2), patterns.causal(4)
    assert torch.equal((w | c).mask, rows("1100", "1110", "1111", "1111"))
    assert torch.equal((w & c).mask, rows("1000", "1100", "0110", "0011"))


# ---- factories against the brute-force predicate ------------------------------------


@SETTINGS
@given(n=st.integers(1, 40), half=st.integers(1, 25))
def test_sliding_window_matches_definition(n, half):
    p = patterns.sliding_window(n, 2 * half)
    assert torch.equal(p.mask, ref_sliding(n, 2 * half))


@SETTINGS
@given(n=st.integers(1, 40), half=st.integers(1, 10), dilation=st.integers(1, 5))
def test_dilated_window_matches_definition(n, half, dilation):
    p = patterns.dilated_window(n, 2 * half, dilation)
    assert torch.equal(p.mask, ref_dilated(n, 2 * half, dilation))


@SETTINGS
@given(n=st.integers(1, 40), half=st.integers(1, 10), data=st.data())
def test_longformer_matches_definition(n, half, data):
    globals_ = tuple(data.draw(st.lists(st.integers(0, n - 1), max_size=4)))
    p = patterns.longformer(n, 2 * half, global_tokens=globals_)
    assert torch.equal(p.mask, ref_longformer(n, 2 * half, globals_))
    only_globals = brute_force(n, lambda i, j: i in globals_ or j in globals_)
    assert torch.equal(patterns.global_tokens(n, globals_).mask, only_globals)


@SETTINGS
@given(n=st.integers(1, 40))
def test_causal_and_dense_match_definition(n):
    assert torch.equal(patterns.causal(n).mask, brute_force(n, lambda i, j: j <= i))
    assert torch.equal(patterns.dense(n).mask, torch.ones(n, n, dtype=torch.bool))


@SETTINGS
@given(args=bigbird_args())
def test_bigbird_matches_definition(args):
    p = patterns.bigbird(**args)
    n, bs, heads = args["seq_len"], args["block_size"], args["num_heads"]
    nbb = math.ceil(n / bs)
    mask = p.mask
    assert mask.shape == ((n, n) if heads is None else (heads, n, n))
    mask3 = mask if heads is not None else mask.unsqueeze(0)
    # block-constant: the token mask is its own block layout expanded (last block short)
    layout = mask3[:, ::bs, ::bs]  # (H, nbb, nbb), one token per block pair
    assert layout.shape[-1] == nbb
    assert torch.equal(mask3, expand_blocks(layout, bs, n))
    fixed = bigbird_fixed_blocks(nbb, args["window_blocks"], args["global_blocks"])
    for h in range(mask3.shape[0]):
        assert (layout[h] | ~fixed).all(), "window band and global blocks always attend"
        for r in range(args["global_blocks"], nbb):
            extra = layout[h, r] & ~fixed[r]  # blocks beyond window and globals: the random ones
            assert int(extra.sum()) == args["random_blocks"], (h, r)


@SETTINGS
@given(args=bigbird_args())
def test_bigbird_recipe_remakes_its_table(args):
    # BlockRecipe (what triton_layout.py sends to the GPU) read block by block in plain
    # Python must give back the table, and the random blocks must be the drawn ones.
    p = patterns.bigbird(**args)
    recipe, bs = p.recipe, args["block_size"]
    nbb = math.ceil(args["seq_len"] / bs)
    layout = p.layout if p.layout.dim() == 3 else p.layout.unsqueeze(0)
    assert recipe.random.dtype == torch.int32 and recipe.random.shape[:2] == (len(layout), nbb)
    for h in range(len(layout)):
        random = recipe.random[h].tolist()
        for r in range(nbb):
            if r < args["global_blocks"]:
                assert set(random[r]) <= {-1}, "global rows draw no random blocks"
            for c in range(nbb):
                on = (abs(r - c) <= recipe.band or min(r, c) < recipe.global_blocks
                      or c in random[r])  # fmt: skip
                assert bool(layout[h, r, c]) == on, (h, r, c)


def test_bigbird_seed_and_heads():
    kwargs = dict(seq_len=250, block_size=10, window_blocks=3, global_blocks=1, random_blocks=3)
    a = patterns.bigbird(**kwargs, seed=0).mask
    assert torch.equal(a, patterns.bigbird(**kwargs, seed=0).mask), "same seed, same mask"
    assert not torch.equal(a, patterns.bigbird(**kwargs, seed=1).mask), "another seed differs"
    per_head = patterns.bigbird(**kwargs, seed=0, num_heads=4)
    assert per_head.num_heads == 4
    m = per_head.mask
    assert m.shape == (4, 250, 250)
    for h in range(1, 4):
        assert not torch.equal(m[0], m[h]), f"head {h} drew the same random blocks as head 0"


# ---- element predicate, composition, density ----------------------------------------


@SETTINGS
@given(case=any_pattern(), data=st.data())
def test_allows_and_mask_mod_agree_with_mask(case, data):
    p, ref = case
    n = p.seq_len
    assert torch.equal(p.mask, ref.expand(p.mask.shape))
    ref3 = ref if ref.dim() == 3 else ref.unsqueeze(0)
    heads = p.num_heads or 1
    if p.num_heads is None:
        assert p.mask.shape == (n, n)
    q_idx = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=30)))
    kv_idx = torch.tensor(
        data.draw(st.lists(st.integers(0, n - 1), min_size=len(q_idx), max_size=len(q_idx)))
    )
    mask_mod = p.to_mask_mod()
    grid_q, grid_k = torch.arange(n).view(n, 1), torch.arange(n).view(1, n)
    for h in range(heads):
        expected = ref3[h if ref3.shape[0] > 1 else 0]
        assert torch.equal(p.allows(q_idx, kv_idx, h), expected[q_idx, kv_idx])
        i, j = int(q_idx[0]), int(kv_idx[0])
        assert bool(p.allows(i, j, h)) == bool(expected[i, j]), "plain int indices"
        got = mask_mod(torch.tensor(0), torch.tensor(h), grid_q, grid_k)
        assert torch.equal(got.expand(n, n), expected)


@SETTINGS
@given(case=any_pattern())
def test_density_is_allowed_pairs_over_n_squared(case):
    p, ref = case
    n = p.seq_len
    ref3 = ref.expand(p.mask.shape)
    heads = p.num_heads or 1
    assert p.density == pytest.approx(int(ref3.sum()) / (heads * n * n), abs=1e-12)


def test_union_rejects_mismatched_patterns():
    with pytest.raises(ValueError, match="same seq_len.*8.*9"):
        patterns.sliding_window(8, 4) | patterns.causal(9)
    with pytest.raises(ValueError, match="same seq_len"):
        patterns.sliding_window(8, 4) & patterns.causal(9)
    two = patterns.bigbird(16, 4, 1, 1, 1, num_heads=2)
    three = patterns.bigbird(16, 4, 1, 1, 1, num_heads=3)
    with pytest.raises(ValueError, match="num_heads.*2.*3"):
        two | three


# ---- block structure against a tile scan --------------------------------------------


@SETTINGS
@given(case=any_pattern(), block_size=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 64]))
def test_block_kinds_match_tile_scan(case, block_size):
    p, ref = case
    expected = ref_kinds(ref, block_size)
    kinds = p.block_kinds(block_size)
    if p.num_heads is not None:
        expected = expected.expand(p.num_heads, *expected.shape[-2:])
    assert kinds.dtype == torch.int8
    assert torch.equal(kinds, expected)
    layout = p.block_layout(block_size)
    assert layout.dtype == torch.bool
    assert torch.equal(layout, expected != 0)


@SETTINGS
@given(args=bigbird_args(max_n=40), block_size=st.integers(1, 45))
def test_bigbird_block_kinds_at_any_block_size(args, block_size):
    p = patterns.bigbird(**args)
    assert torch.equal(p.block_kinds(block_size), ref_kinds(p.mask, block_size))


@pytest.mark.parametrize("block_size", [1, 3, 4, 6, 13, 100])
def test_per_head_union_block_kinds(block_size):
    # a per-head BigBird OR'd with a shared Longformer: kinds differ per head
    p = patterns.bigbird(26, 4, 1, 1, 2, seed=3, num_heads=3) | patterns.longformer(26, 4, (20,))
    assert p.num_heads == 3
    assert torch.equal(p.block_kinds(block_size), ref_kinds(p.mask, block_size))


# ---- bad inputs -----------------------------------------------------------------------


@pytest.mark.parametrize("window", [3, 0, -2, 2.0])
def test_bad_window(window):
    with pytest.raises(ValueError, match=rf"expected window to be an even int > 0.*got {window!r}"):
        patterns.sliding_window(8, window)
    with pytest.raises(ValueError, match="expected window"):
        patterns.longformer(8, window)
    with pytest.raises(ValueError, match="expected window"):
        patterns.dilated_window(8, window, 2)


def test_bad_dilation_and_seq_len():
    with pytest.raises(ValueError, match="expected dilation to be a positive int, got 0"):
        patterns.dilated_window(8, 4, 0)
    with pytest.raises(ValueError, match="expected seq_len to be a positive int, got 0"):
        patterns.causal(0)


@pytest.mark.parametrize("block_size", [0, -4])
def test_bad_block_size(block_size):
    with pytest.raises(
        ValueError, match=f"expected block_size to be a positive int, got {block_size}"
    ):
        patterns.sliding_window(8, 4).block_kinds(block_size)
    with pytest.raises(ValueError, match="expected block_size"):
        patterns.sliding_window(8, 4).block_layout(block_size)
    with pytest.raises(ValueError, match="expected block_size"):
        patterns.bigbird(8, block_size=block_size)


@pytest.mark.parametrize("token", [8, -1, 100])
def test_global_token_out_of_range(token):
    with pytest.raises(
        ValueError, match=rf"expected global token indices in \[0, 8\), got {token}"
    ):
        patterns.longformer(8, 4, global_tokens=(0, token))
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        patterns.global_tokens(8, [token])


def test_bigbird_bad_arguments():
    with pytest.raises(ValueError, match="expected window_blocks to be odd.*got 2"):
        patterns.bigbird(64, 8, window_blocks=2)
    # 4 blocks of 16, block 0 global, window 3: block 2 already sees 0, 1, 2, 3 -> none left
    with pytest.raises(ValueError, match="expected random_blocks <= 0.*got 1"):
        patterns.bigbird(64, 16, window_blocks=3, global_blocks=1, random_blocks=1)
    with pytest.raises(ValueError, match="expected global_blocks <= 4.*got 5"):
        patterns.bigbird(64, 16, global_blocks=5, random_blocks=0)
    with pytest.raises(ValueError, match="expected random_blocks to be an int >= 0, got -1"):
        patterns.bigbird(64, 16, random_blocks=-1)


@SETTINGS
@given(args=bigbird_args())
def test_bigbird_one_random_block_too_many(args):
    nbb = math.ceil(args["seq_len"] / args["block_size"])
    fixed = bigbird_fixed_blocks(nbb, args["window_blocks"], args["global_blocks"])
    left = [int((~fixed[r]).sum()) for r in range(args["global_blocks"], nbb)]
    assume(left)  # when every block is global, no row draws random blocks
    args["random_blocks"] = min(left) + 1
    with pytest.raises(ValueError, match=f"expected random_blocks <= {min(left)}"):
        patterns.bigbird(**args)


def test_non_bool_mask_is_a_type_error():
    with pytest.raises(TypeError, match="expected a bool mask, got dtype torch.float32"):
        patterns.as_pattern(torch.ones(4, 4))
    with pytest.raises(TypeError, match="expected a Pattern or a bool torch.Tensor"):
        patterns.as_pattern([[True]])
    with pytest.raises(ValueError, match=r"expected a mask of shape \(n, n\) or \(H, n, n\)"):
        patterns.as_pattern(torch.ones(3, 4, dtype=torch.bool))


def test_global_tokens_are_grouped_in_runs_and_both_membership_tests_agree():
    p = patterns.GlobalTokens(10, [8, 0, 1, 2, 5, 7])
    assert p.runs == ((0, 3), (5, 6), (7, 9))
    scattered = list(range(0, 60, 3))  # 20 runs: more than MAX_RUNS_COMPARED, a table lookup
    assert len(patterns.GlobalTokens(60, scattered).runs) > patterns.GlobalTokens.MAX_RUNS_COMPARED
    for tokens in ([0, 1, 2, 5, 7, 8], scattered, list(range(60))):
        p = patterns.global_tokens(60, tokens)
        expected = brute_force(60, lambda i, j, t=set(tokens): i in t or j in t)
        assert torch.equal(p.mask, expected), tokens


# ---- parts: offsets | tokens | blocks -------------------------------------------------


def mask_from_parts(parts: patterns.Parts, n: int) -> torch.Tensor:
    """Bool (H', n, n) from the definition in Parts' docstring, written out here."""
    i, j = torch.arange(n).view(n, 1), torch.arange(n).view(1, n)
    mask = torch.zeros(1, n, n, dtype=torch.bool)
    if parts.offsets is not None:
        mask |= parts.offsets(i - j)
    is_global = torch.zeros(n, dtype=torch.bool)
    is_global[list(parts.tokens)] = True
    mask |= is_global.view(n, 1) | is_global.view(1, n)
    if parts.blocks is not None:
        layout, b = parts.blocks.layout, parts.blocks.block_size
        layout = layout if layout.dim() == 3 else layout.unsqueeze(0)
        mask = mask | layout[:, i // b, j // b]
    return mask


@SETTINGS
@given(case=any_pattern())
def test_parts_describe_the_same_mask(case):
    p, ref = case
    parts = p.parts()
    if parts is not None:
        ref3 = ref if ref.dim() == 3 else ref.unsqueeze(0)
        got = mask_from_parts(parts, p.seq_len)
        assert torch.equal(got.expand_as(ref3), ref3.expand_as(got)), repr(p)


def test_which_patterns_have_parts():
    n = 20
    window, tokens = patterns.sliding_window(n, 4), patterns.global_tokens(n, [3])
    bigbird = patterns.bigbird(n, 4, 1, 1, 0)
    has = [window, tokens, bigbird, window | tokens | bigbird, window & patterns.causal(n),
           patterns.longformer(n, 4, [0, 7]),
           patterns.dilated_window(n, 4, 2) | tokens]  # fmt: skip
    lacks = [patterns.as_pattern(window.mask), window & tokens, bigbird | bigbird,
             bigbird & window, window | patterns.as_pattern(window.mask)]  # fmt: skip
    assert all(p.parts() is not None for p in has)
    assert all(p.parts() is None for p in lacks)
    assert patterns.longformer(n, 4, [0, 7, 1]).parts().tokens == (0, 1, 7)


@SETTINGS
@given(case=any_pattern())
def test_offset_ranges_are_the_offsets(case):
    # Where the parts give a range, the allowed offsets are exactly lo <= d <= hi.
    p, _ = case
    parts = p.parts()
    if parts is not None and parts.offset_range is not None:
        lo, hi = parts.offset_range
        d = torch.arange(-(p.seq_len - 1), p.seq_len)
        assert torch.equal(parts.offsets(d), (d >= lo) & (d <= hi)), repr(p)


def test_which_offsets_are_one_range():
    n = 20
    window, causal = patterns.sliding_window(n, 4), patterns.causal(n)
    dilated = patterns.dilated_window(n, 4, 2)
    past = patterns.OffsetPattern(n, lambda d: d <= -5, "past", (-(n - 1), -5))
    ranges = {
        window: (-2, 2),
        window & causal: (0, 2),
        window | causal: (-2, 19),
        patterns.dense(n): (-19, 19),
        patterns.longformer(n, 4, [0]): (-2, 2),
        patterns.dilated_window(n, 4, 1): (-2, 2),
        (past & causal) | window: (-2, 2),  # an empty range joins any other
        dilated: None,
        window | dilated: None,
        window | (past & patterns.sliding_window(n, 12)): None,  # a gap: -6..-5, then -2..2
    }
    for p, expected in ranges.items():
        assert p.parts().offset_range == expected, repr(p)
    assert (past & causal).parts().offset_range == (0, -5)  # empty: no offset allowed
