"""Stage 3 (blocked) against stage 2 (masked), the independent n x n reference.

Stage 2 is itself checked against SDPA and FlexAttention in test_dense_masked.py. Here the
blocked stage must give the same outputs, weights and gradients for random patterns,
shapes, block sizes (dividing n or not, larger than n) and dtypes.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_attn_edu import blocked, masked, patterns

SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def qkv(batch, heads, n, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=g, dtype=dtype) for _ in range(3)]


@st.composite
def cases(draw):
    """(pattern or mask, heads, batch) over every factory, compositions and raw masks."""
    n = draw(st.integers(1, 70))
    heads = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    window = 2 * draw(st.integers(1, max(1, n // 2)))
    tokens = draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=3))
    bb_bs = draw(st.integers(1, max(1, n // 3)))
    nbb = math.ceil(n / bb_bs)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    density = draw(st.sampled_from([0.05, 0.3, 0.9]))
    options = {
        "dense": lambda: patterns.dense(n),
        "causal": lambda: patterns.causal(n),
        "window": lambda: patterns.sliding_window(n, window),
        "dilated": lambda: patterns.dilated_window(n, window, draw(st.integers(1, 4))),
        "longformer": lambda: patterns.longformer(n, window, tokens),
        "global": lambda: patterns.global_tokens(n, tokens or [0]),
        "bigbird": lambda: patterns.bigbird(
            n, bb_bs, 1, min(1, nbb), int(nbb >= 4), seed=seed, num_heads=heads
        ),
        "union": lambda: patterns.dilated_window(n, window, 2) | patterns.causal(n),
        "intersection": lambda: patterns.longformer(n, window, tokens) & patterns.causal(n),
        "mask2d": lambda: torch.rand(n, n, generator=g) < density,
        "mask3d": lambda: torch.rand(heads, n, n, generator=g) < density,
        "mask4d": lambda: torch.rand(batch, heads, n, n, generator=g) < density,
    }
    kind = draw(st.sampled_from(sorted(options)))
    return options[kind](), heads, batch


@SETTINGS
@given(
    case=cases(),
    dim=st.sampled_from([1, 8, 16]),
    bs=st.integers(1, 80),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_forward_and_gradients_equal_stage_2(case, dim, bs, dtype, seed):
    pattern, heads, batch = case
    n = pattern.shape[-1] if isinstance(pattern, torch.Tensor) else pattern.seq_len
    q, k, v = (t.requires_grad_() for t in qkv(batch, heads, n, dim, dtype, seed))
    expected = masked.attention(q, k, v, pattern)
    got = blocked.attention(q, k, v, pattern, block_size=bs)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got, expected, atol=TOL[dtype], rtol=TOL[dtype])

    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (q, k, v), grad_out)
    have = torch.autograd.grad(got, (q, k, v), grad_out)
    for name, a, b in zip("qkv", have, want, strict=True):
        torch.testing.assert_close(a, b, atol=10 * TOL[dtype], rtol=10 * TOL[dtype], msg=name)


@SETTINGS
@given(case=cases(), bs=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_weights_and_lse_equal_stage_2(case, bs, seed):
    pattern, heads, batch = case
    n = pattern.shape[-1] if isinstance(pattern, torch.Tensor) else pattern.seq_len
    q, k, v = qkv(batch, heads, n, 8, torch.float64, seed)
    out_ref, weights_ref = masked.attention(q, k, v, pattern, return_weights=True)
    out, weights = blocked.attention(q, k, v, pattern, block_size=bs, return_weights=True)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(weights.to_dense(), weights_ref.expand(batch, heads, n, n))

    # lse_i = log sum_j exp(s_ij) over allowed j, straight from the definition.
    mask = pattern.mask if isinstance(pattern, patterns.Pattern) else pattern
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    lse_ref = scores.masked_fill(~mask, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(weights.lse, lse_ref)


def test_bfloat16_close_to_float32_stage_2():
    n, heads = 300, 2
    pattern = patterns.longformer(n, 64, (0, 150))
    q, k, v = qkv(2, heads, n, 32, torch.float32, 0)
    expected = masked.attention(q, k, v, pattern)
    got = blocked.attention(*(t.bfloat16() for t in (q, k, v)), pattern, block_size=32)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("bs", [1, 7, 16, 64])
def test_fully_masked_rows_give_zeros_and_zero_gradients(bs):
    n = 37
    mask = patterns.sliding_window(n, 4).mask
    mask[[0, 5, 36]] = False  # three queries that may attend nothing
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, n, 8, torch.float64, 1))
    out, weights = blocked.attention(q, k, v, mask, block_size=bs, return_weights=True)
    out.sum().backward()
    assert torch.all(out[:, :, [0, 5, 36]] == 0)
    assert torch.all(weights.lse[:, :, [0, 5, 36]] == float("-inf"))
    assert torch.all(q.grad[:, :, [0, 5, 36]] == 0)
    for t in (q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()


def test_everything_masked_gives_zeros():
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 10, 4, torch.float32, 2))
    out = blocked.attention(q, k, v, torch.zeros(10, 10, dtype=torch.bool), block_size=4)
    out.sum().backward()
    assert torch.all(out == 0) and torch.all(q.grad == 0) and torch.all(v.grad == 0)


def test_large_structured_pattern_visits_only_active_tiles():
    # n = 8192 with w = 64: an (n, n) float mask would be 256 MiB; stage 3 never builds it.
    n = 8192
    pattern = patterns.longformer(n, 64, (0,))
    q, k, v = qkv(1, 1, n, 8, torch.float32, 3)
    out = blocked.attention(q, k, v, pattern, block_size=64)
    # Spot-check query rows against the definition, one row at a time.
    for i in (0, 1, 4000, n - 1):
        keys = pattern.allows(torch.tensor(i), torch.arange(n)).nonzero().squeeze(1)
        w = torch.softmax(q[0, 0, i] @ k[0, 0, keys].T / math.sqrt(8), -1)
        torch.testing.assert_close(out[0, 0, i], w @ v[0, 0, keys], atol=1e-5, rtol=1e-5)


def test_errors_say_what_was_expected():
    q, k, v = qkv(1, 2, 16, 4, torch.float32, 0)
    with pytest.raises(ValueError, match="seq_len 16"):
        blocked.attention(q, k, v, patterns.causal(15))
    with pytest.raises(ValueError, match="2 heads"):
        blocked.attention(q, k, v, patterns.bigbird(16, 4, 1, 1, 1, num_heads=3))
    with pytest.raises(ValueError, match="block_size"):
        blocked.attention(q, k, v, patterns.causal(16), block_size=0)
    with pytest.raises(TypeError, match="bool"):
        blocked.attention(q, k, v, torch.ones(16, 16))
    with pytest.raises(ValueError, match="head_dim"):
        blocked.attention(q[0], k, v, patterns.causal(16))
